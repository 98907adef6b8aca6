"""comfyui-glance: Glance phase-split sampling and one-image LoRA training for ComfyUI (V3 node pack).

Layout, one direction: nodes/ (the node modules) -> training/, sampling/ (logic) -> schedules/ (timestep tables,
switch rules, the schedule search, schedule files) -> host_compat.py -> the host.
"""
from comfy_api.latest import ComfyExtension, io

from .nodes import NODE_LIST
from .nodes.common.folders import register_schedules_folder


class GlanceExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_LIST)


async def comfy_entrypoint() -> GlanceExtension:
    register_schedules_folder()
    return GlanceExtension()
