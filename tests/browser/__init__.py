"""Helpers for the browser tests: a JupyterLab server on localhost and a page in Debian's Chromium."""
