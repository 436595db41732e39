"""Chroma XML templates, installed as the package ``bridge.xml_templates`` (data only)."""
