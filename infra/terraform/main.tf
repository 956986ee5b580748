locals {
  bucket = var.bucket_name != "" ? var.bucket_name : "${var.project_id}-higgs"
  zone   = var.zone != "" ? var.zone : "${var.region}-a"

  # APIs the pipeline calls.
  services = [
    "aiplatform.googleapis.com",       # Vertex AI training jobs and the flow runs
    "artifactregistry.googleapis.com", # the images
    "cloudbuild.googleapis.com",       # building the images
    "compute.googleapis.com",          # Dataflow / Vertex VMs, the worker VM
    "dataflow.googleapis.com",         # the converter on Dataflow
    "iam.googleapis.com",
    "logging.googleapis.com",       # job logs, read by submit_and_follow
    "secretmanager.googleapis.com", # the Prefect API key for the worker VM
    "storage.googleapis.com",
  ]

  # Least privilege per identity; bucket and registry access is granted on those resources
  # (storage.tf, registry.tf), not project-wide.
  project_roles = {
    # Flow runs (orchestration): launch Dataflow and Vertex AI jobs, read their logs.
    flow = [
      "roles/aiplatform.user",
      "roles/dataflow.developer",
      "roles/logging.viewer",
    ]
    # Data plane: Dataflow workers and Vertex AI training replicas.
    worker = [
      "roles/dataflow.worker",
      "roles/logging.logWriter",
      "roles/monitoring.metricWriter",
    ]
    # The Prefect worker: creates one Vertex AI CustomJob per flow run.
    prefect = [
      "roles/aiplatform.user",
      "roles/logging.logWriter",
    ]
  }
}

resource "google_project_service" "apis" {
  for_each           = toset(local.services)
  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}
