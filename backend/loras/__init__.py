"""LoRAs merged into a base model: the few-step distilled ones, and a painter's own."""

from .formats import LoRAPatches, read_lora
from .merge import LoRAHandle, attach_lora

__all__ = ["LoRAHandle", "LoRAPatches", "attach_lora", "read_lora"]
