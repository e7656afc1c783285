"""Data files shipped with zvstudio (installed as the package `zvstudio.resources`)."""
