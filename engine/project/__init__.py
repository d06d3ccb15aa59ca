"""The project file: DuckDB through SQLModel plus an assets folder. See ``store.Project``;
the paged reads the studio needs are in ``reads``."""

from engine.project.reads import Page, image_page, revision, sample_page, sample_plan
from engine.project.schema import (
    SCHEMA_VERSION,
    Dataset,
    Encoding,
    Evaluation,
    Experiment,
    Export,
    Generation,
    HandOverride,
    Image,
    Job,
    MapLayout,
    Meta,
    Model,
    Sample,
    Selection,
    dumps,
    new_id,
    utcnow,
)
from engine.project.store import (
    Project,
    free_name,
    project_paths,
    save_array_atomic,
    write_json_atomic,
)

__all__ = [
    "SCHEMA_VERSION", "Dataset", "Encoding", "Evaluation", "Experiment", "Export", "Generation",
    "HandOverride", "Image", "Job", "MapLayout", "Meta", "Model", "Sample", "Selection", "dumps", "new_id",
    "utcnow", "Project",
    "free_name", "project_paths", "save_array_atomic", "write_json_atomic",
    "Page", "image_page", "sample_page", "sample_plan", "revision",
]
