"""Pictures of matches (presentation, not matching): importable without the command line.

from emdcli.render.explain import render_match, save_picture
"""
