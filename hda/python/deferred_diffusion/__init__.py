"""The deferred-diffusion client: a job API for Houdini, Nuke, the farm and scripts.

    from deferred_diffusion import Client, DeferredDiffusionError

    client = Client()  # DD_SERVER_ADDRESS, DD_API_KEY
    job = client.run("images", {"model": "sdxl", "prompt": "a lighthouse"},
                     on_progress=lambda p: print(p.describe()))
    print(job["result"]["images"][0]["path"])

Plain Python with httpx: no Houdini or Nuke needed. Their glue (``houdini``, ``nuke``)
imports ``hou``/``nuke`` only when called.
"""

from deferred_diffusion.client import (
    DEFAULT_ADDRESS,
    Client,
    DeferredDiffusionError,
    Job,
    Progress,
    route,
)

__all__ = ["DEFAULT_ADDRESS", "Client", "DeferredDiffusionError", "Job", "Progress", "route"]
