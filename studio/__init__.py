"""RCDM Studio's web UI (Gradio): layout and event wiring over the engine. See ``app.py``."""

from studio.gradio_stubs import skip_stub_generation

skip_stub_generation()  # before anything here imports gradio: seconds off every start
