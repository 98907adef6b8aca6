"""comfyui-glance: Glance phase-split sampling and one-image LoRA training for ComfyUI (V3 node pack)."""
from comfy_api.latest import ComfyExtension, io

from .nodes import NODE_LIST


class GlanceExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_LIST)


async def comfy_entrypoint() -> GlanceExtension:
    return GlanceExtension()
