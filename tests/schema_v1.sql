-- The schema of version 1 projects (before run rows recorded code_version / job_id and
-- before the experiment table), as DuckDB wrote it: tests build an old project from it.
CREATE TABLE dataset(id VARCHAR, "name" VARCHAR NOT NULL, "source" VARCHAR NOT NULL, root VARCHAR NOT NULL, num_classes INTEGER NOT NULL, num_images INTEGER NOT NULL, num_train INTEGER NOT NULL, num_test INTEGER NOT NULL, classes_json VARCHAR NOT NULL, skipped_json VARCHAR NOT NULL, config_json VARCHAR NOT NULL, created_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY(id));
CREATE TABLE "encoding"(id VARCHAR, dataset_id VARCHAR NOT NULL, "target" VARCHAR NOT NULL, target_id VARCHAR NOT NULL, encoder VARCHAR NOT NULL, offline BOOLEAN NOT NULL, dim INTEGER NOT NULL, count INTEGER NOT NULL, array_path VARCHAR NOT NULL, state_path VARCHAR NOT NULL, config_json VARCHAR NOT NULL, created_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY(id));
CREATE TABLE evaluation(id VARCHAR, "name" VARCHAR NOT NULL, dataset_id VARCHAR NOT NULL, mix VARCHAR NOT NULL, selection_id VARCHAR NOT NULL, generation_id VARCHAR NOT NULL, status VARCHAR NOT NULL, top1 FLOAT, top5 FLOAT, num_train INTEGER NOT NULL, num_test INTEGER NOT NULL, config_json VARCHAR NOT NULL, results_json VARCHAR NOT NULL, job_id VARCHAR NOT NULL, created_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY(id));
CREATE TABLE "export"(id VARCHAR, selection_id VARCHAR NOT NULL, folder VARCHAR NOT NULL, count INTEGER NOT NULL, manifest VARCHAR NOT NULL, config_json VARCHAR NOT NULL, created_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY(id));
CREATE TABLE generation(id VARCHAR, "name" VARCHAR NOT NULL, model_id VARCHAR NOT NULL, dataset_id VARCHAR NOT NULL, encoder VARCHAR NOT NULL, folder VARCHAR NOT NULL, count INTEGER NOT NULL, config_json VARCHAR NOT NULL, job_id VARCHAR NOT NULL, created_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY(id));
CREATE TABLE image(id VARCHAR, dataset_id VARCHAR NOT NULL, idx INTEGER NOT NULL, path VARCHAR NOT NULL, thumb VARCHAR NOT NULL, "label" INTEGER NOT NULL, class_name VARCHAR NOT NULL, split VARCHAR NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, source_path VARCHAR NOT NULL, PRIMARY KEY(id));
CREATE TABLE job(id VARCHAR, kind VARCHAR NOT NULL, title VARCHAR NOT NULL, status VARCHAR NOT NULL, folder VARCHAR NOT NULL, pid INTEGER, "error" VARCHAR NOT NULL, result_id VARCHAR NOT NULL, created_at TIMESTAMP WITH TIME ZONE NOT NULL, started_at TIMESTAMP WITH TIME ZONE, finished_at TIMESTAMP WITH TIME ZONE, PRIMARY KEY(id));
CREATE TABLE meta("key" VARCHAR, "value" VARCHAR NOT NULL, PRIMARY KEY("key"));
CREATE TABLE model(id VARCHAR, "name" VARCHAR NOT NULL, dataset_id VARCHAR NOT NULL, encoding_id VARCHAR NOT NULL, encoder VARCHAR NOT NULL, status VARCHAR NOT NULL, steps_done INTEGER NOT NULL, "checkpoint" VARCHAR NOT NULL, final_loss FLOAT, config_json VARCHAR NOT NULL, metrics_json VARCHAR NOT NULL, job_id VARCHAR NOT NULL, created_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY(id));
CREATE TABLE "sample"(id VARCHAR, generation_id VARCHAR NOT NULL, idx INTEGER NOT NULL, path VARCHAR NOT NULL, source_image_id VARCHAR NOT NULL, "label" INTEGER NOT NULL, class_name VARCHAR NOT NULL, seed INTEGER NOT NULL, sampler VARCHAR NOT NULL, steps INTEGER NOT NULL, guidance FLOAT NOT NULL, PRIMARY KEY(id));
CREATE TABLE selection(id VARCHAR, "name" VARCHAR NOT NULL, generation_id VARCHAR NOT NULL, encoding_id VARCHAR NOT NULL, count INTEGER NOT NULL, members_path VARCHAR NOT NULL, config_json VARCHAR NOT NULL, created_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY(id));
CREATE INDEX ix_dataset_name ON dataset("name");
CREATE INDEX ix_encoding_dataset_id ON "encoding"(dataset_id);
CREATE INDEX ix_evaluation_name ON evaluation("name");
CREATE INDEX ix_generation_name ON generation("name");
CREATE INDEX ix_image_dataset_id ON image(dataset_id);
CREATE INDEX ix_model_name ON model("name");
CREATE INDEX ix_sample_generation_id ON "sample"(generation_id);
CREATE INDEX ix_selection_name ON selection("name");
