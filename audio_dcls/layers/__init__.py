"""DCLS layers and their training/inference helpers."""
from .dcls_conv import DCLS_LAYERS, Dcls1d, Dcls2d
from .dcls_kernel import DclsKernel, build_dcls_kernel, dcls_tap_profiles, kernel_from_profiles
from .depthwise_conv import DepthwiseConv2d, use_fast_depthwise
from .fold import fold_dcls, fold_dcls_layer
from .param_groups import dcls_param_groups
from .shared_positions import SharedKernelCache, positions_are_shared, share_positions, share_kernel_build

__all__ = [
    "DCLS_LAYERS",
    "Dcls1d",
    "Dcls2d",
    "DclsKernel",
    "build_dcls_kernel",
    "dcls_tap_profiles",
    "kernel_from_profiles",
    "DepthwiseConv2d",
    "use_fast_depthwise",
    "fold_dcls",
    "fold_dcls_layer",
    "dcls_param_groups",
    "share_positions",
    "positions_are_shared",
    "share_kernel_build",
    "SharedKernelCache",
]
