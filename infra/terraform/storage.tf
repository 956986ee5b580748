resource "google_storage_bucket" "higgs" {
  project                     = var.project_id
  name                        = local.bucket
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  # Published models (models/, latest.json) keep old versions for a while.
  versioning {
    enabled = true
  }

  # Dataflow temp files, staged packages/pipelines and presplit parts are scratch.
  lifecycle_rule {
    condition {
      age            = var.tmp_retention_days
      matches_prefix = ["tmp/", "staging/", "parts/"]
    }
    action {
      type = "Delete"
    }
  }

  # Copies of Vertex AI runs (the flow copies them into its run directory and publishes).
  lifecycle_rule {
    condition {
      age            = var.run_retention_days
      matches_prefix = ["runs/", "staging/vertex-runs/"]
    }
    action {
      type = "Delete"
    }
  }

  # Sources are read rarely (the converter reuses a dataset while the source is unchanged).
  lifecycle_rule {
    condition {
      age            = 30
      matches_prefix = ["sources/"]
    }
    action {
      type          = "SetStorageClass"
      storage_class = "NEARLINE"
    }
  }

  # Replaced object versions (e.g. an older latest.json) go after 30 days.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

# Read/write objects in this bucket only.
resource "google_storage_bucket_iam_member" "object_users" {
  for_each = {
    flow   = google_service_account.flow.email
    worker = google_service_account.worker.email
  }
  bucket = google_storage_bucket.higgs.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${each.value}"
}

# storage.buckets.get on this bucket only: Beam and Dataflow look the temp/staging bucket up
# before a job starts (objectUser alone covers objects, not the bucket's metadata).
resource "google_storage_bucket_iam_member" "bucket_readers" {
  for_each = {
    flow   = google_service_account.flow.email
    worker = google_service_account.worker.email
  }
  bucket = google_storage_bucket.higgs.name
  role   = "roles/storage.legacyBucketReader"
  member = "serviceAccount:${each.value}"
}
