"""RCDM Studio's web UI (Gradio): layout and event wiring over the engine. See ``app.py``."""
