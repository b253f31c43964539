"""Building blocks shared by the model families."""

from medconvnext.layers.drop import DropPath, drop_path, drop_path_rates
from medconvnext.layers.init import init_weights
from medconvnext.layers.norm import GRN3d, LayerNorm3d, make_norm3d
from medconvnext.layers.pooling import GLOBAL_POOLS, check_global_pool, global_pool
from medconvnext.layers.shapes import as_triple, check_input_size

__all__ = [
    "GLOBAL_POOLS",
    "DropPath",
    "GRN3d",
    "LayerNorm3d",
    "as_triple",
    "check_global_pool",
    "check_input_size",
    "drop_path",
    "drop_path_rates",
    "global_pool",
    "init_weights",
    "make_norm3d",
]
