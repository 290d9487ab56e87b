"""Networks: the IResNet trunk (U and head F), the CosFace classifier, per-channel PReLU."""

from pdsn_jax.models.cosface import CosFaceHead, cosface_logits
from pdsn_jax.models.iresnet import IResNet, STAGE_BLOCKS
from pdsn_jax.models.layers import PReLU

__all__ = ["CosFaceHead", "cosface_logits", "IResNet", "STAGE_BLOCKS", "PReLU"]
