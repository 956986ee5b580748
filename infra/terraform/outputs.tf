output "bucket" {
  description = "The pipeline bucket (HIGGS_BUCKET)."
  value       = google_storage_bucket.higgs.name
}

output "image_repository" {
  description = "Push images here (HIGGS_IMAGE = <this>/higgs:TAG)."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.higgs.repository_id}"
}

output "service_accounts" {
  description = "higgs-flow runs flow runs; higgs-worker runs Dataflow workers and training replicas."
  value       = local.accounts
}
