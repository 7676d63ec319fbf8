"""Image data: decoding any image file to RGB, and opening image sets (folders and lists).

``load_rgb`` turns one file into an RGB image or raises
:class:`~negspace.errors.UnreadableImageError`; ``open_image_set`` lists an ID or OOD set and
raises :class:`~negspace.errors.DatasetError` when it is missing or empty, before any model loads.
"""

from negspace.data.images import load_rgb
from negspace.data.sets import (
    IMAGE_EXTENSIONS,
    ImageSet,
    default_set_name,
    is_feature_file,
    open_image_folder,
    open_image_set,
    open_openood_list,
    open_path_list,
    parse_named_set,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageSet",
    "default_set_name",
    "is_feature_file",
    "load_rgb",
    "open_image_folder",
    "open_image_set",
    "open_openood_list",
    "open_path_list",
    "parse_named_set",
]
