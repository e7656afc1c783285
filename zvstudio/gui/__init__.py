"""The desktop editor: Qt widgets only. Everything it does goes through the engine's
request/job API via `bridge.EngineBridge`; no module outside this package imports Qt."""
