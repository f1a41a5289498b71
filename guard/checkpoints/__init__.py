"""Reading and writing untrusted files: bounded reads and strict JSON (``files``), atomic writes and checked
safetensors (``serialization``), single tensors of a sharded or hub checkpoint (``reader``), checks of a saved
LoRA adapter (``adapter_files``)."""
