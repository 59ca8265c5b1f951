"""The dashboard's static files (HTML, CSS, JS modules), served by ``web.py``.

A package only so that setuptools ships the files with the wheel; no Python here.
"""
