"""Analyses on top of the routes (per-layer error report, planted faults, vendor recipes, profiles): each builds its
variants through the kit (quantization.kit.build_variant), never a route's internals."""
