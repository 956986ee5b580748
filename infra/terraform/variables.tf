variable "project_id" {
  description = "Google Cloud project id (not the number)."
  type        = string
}

variable "region" {
  description = "Region of the bucket, the registry, Dataflow and Vertex AI jobs (e.g. us-central1)."
  type        = string
}

variable "bucket_name" {
  description = "Bucket for sources, datasets, staging, runs and published models; default PROJECT-higgs."
  type        = string
  default     = ""
}

variable "repository_id" {
  description = "Artifact Registry Docker repository for the pipeline images."
  type        = string
  default     = "higgs"
}

variable "tmp_retention_days" {
  description = "Days before Dataflow/Vertex temporary and staging files are deleted."
  type        = number
  default     = 7
}

variable "run_retention_days" {
  description = "Days before Vertex AI run copies under staging/vertex-runs/ and runs/ are deleted (published models under models/ are kept)."
  type        = number
  default     = 90
}

variable "prefect_worker" {
  description = "Create a small VM that runs `prefect worker start --pool higgs-vertex` (needs prefect_api_url and the API key secret)."
  type        = bool
  default     = false
}

variable "prefect_api_url" {
  description = "PREFECT_API_URL the worker VM talks to (Prefect Cloud workspace URL or a self-hosted server)."
  type        = string
  default     = ""
}

variable "prefect_api_key_secret" {
  description = "Secret Manager secret id holding the Prefect API key (create it yourself; never commit the key)."
  type        = string
  default     = "prefect-api-key"
}

variable "worker_machine_type" {
  description = "Machine type of the Prefect worker VM (it only polls and submits jobs)."
  type        = string
  default     = "e2-small"
}

variable "zone" {
  description = "Zone of the Prefect worker VM; default REGION-a."
  type        = string
  default     = ""
}
