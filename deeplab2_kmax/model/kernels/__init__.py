"""Kernels of the model and its loss, chosen by the kernel policy.

Model files call these functions; `policy.py` says which implementation
they run: plain TensorFlow/Keras (REFERENCE, the default on GPUs and TPUs
and in exports) or the CPU paths of `cpu_*.py` (CPU_OPTIMIZED).
"""
from deeplab2_kmax.model.kernels.policy import active_policy
from deeplab2_kmax.model.kernels.policy import cpu_optimized
from deeplab2_kmax.model.kernels.policy import KernelPolicy
from deeplab2_kmax.model.kernels.policy import policy_scope
from deeplab2_kmax.model.kernels.policy import resolve
from deeplab2_kmax.model.kernels.policy import set_policy
