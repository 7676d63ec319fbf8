"""Engines that move data for `negspace embed` and `negspace score`: ``local`` (this process,
in negspace.collections_api) and ``ray`` (:mod:`negspace.engines.ray_engine`)."""
