resource "google_artifact_registry_repository" "higgs" {
  project       = var.project_id
  location      = var.region
  repository_id = var.repository_id
  format        = "DOCKER"
  description   = "HIGGS pipeline images (infra/Dockerfile: higgs, higgs-gpu, higgs-tpu)"

  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 10
    }
  }
  cleanup_policies {
    id     = "delete-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "1209600s" # 14 days
    }
  }

  depends_on = [google_project_service.apis]
}

# Pull access to this repository only, for every identity that runs the image.
resource "google_artifact_registry_repository_iam_member" "readers" {
  for_each   = local.accounts
  project    = var.project_id
  location   = google_artifact_registry_repository.higgs.location
  repository = google_artifact_registry_repository.higgs.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${each.value}"
}
