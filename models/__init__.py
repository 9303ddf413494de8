"""The models a hub ships with: data files, no code (models/README.md).

A package only so that they install with the hub: hub/core/paths.py finds
this folder through it, in a checkout and in site-packages alike.
"""
