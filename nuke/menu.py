"""Nuke: a DeferredDiffusion menu in the Nodes toolbar, with the gizmos of this folder.

Add this folder to Nuke's plugin path (e.g. in ~/.nuke/init.py:
``nuke.pluginAddPath("/path/to/deferred-diffusion/nuke")``) and make the client package
importable (``hda/python`` on PYTHONPATH, with httpx installed for Nuke's Python); this file
then runs at start-up. DD_SERVER_ADDRESS and DD_API_KEY say which server to use.
"""

import os
import sys

import nuke

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.join(os.path.dirname(HERE), "hda", "python")
if os.path.isdir(PACKAGE) and PACKAGE not in sys.path:
    sys.path.append(PACKAGE)

GIZMOS = (
    ("Image", "DeferredDiffusionImage"),
    ("Video", "DeferredDiffusionVideo"),
    ("Text", "DeferredDiffusionText"),
)

menu = nuke.menu("Nodes").addMenu("DeferredDiffusion")
for label, gizmo in GIZMOS:
    menu.addCommand(label, f"nuke.createNode('{gizmo}')")
