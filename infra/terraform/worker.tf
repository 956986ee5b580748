# Optional: a small VM running the Prefect worker of the `higgs-vertex` pool, so the weekly
# retraining starts without a laptop. Enable with -var prefect_worker=true after storing the
# Prefect API key:  printf %s "$PREFECT_API_KEY" | gcloud secrets create prefect-api-key --data-file=-
resource "google_secret_manager_secret_iam_member" "prefect_key" {
  count     = var.prefect_worker ? 1 : 0
  project   = var.project_id
  secret_id = var.prefect_api_key_secret
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.prefect.email}"
}

resource "google_compute_instance" "prefect_worker" {
  count        = var.prefect_worker ? 1 : 0
  project      = var.project_id
  name         = "higgs-prefect-worker"
  zone         = local.zone
  machine_type = var.worker_machine_type

  boot_disk {
    initialize_params {
      image = "cos-cloud/cos-stable"
      size  = 20
    }
  }

  network_interface {
    network = "default"
    access_config {} # outbound access to the Prefect API
  }

  service_account {
    email  = google_service_account.prefect.email
    scopes = ["cloud-platform"]
  }

  shielded_instance_config {
    enable_secure_boot = true
  }

  metadata = {
    enable-oslogin = "TRUE"
    # The worker only polls Prefect and submits Vertex AI jobs; prefect-gcp provides the
    # vertex-ai worker type. The API key is read from Secret Manager at boot, never stored here.
    startup-script = <<-EOT
      #!/bin/bash
      set -euo pipefail
      TOKEN=$(curl -s -H "Metadata-Flavor: Google" \
        "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token" \
        | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
      KEY=$(curl -s -H "Authorization: Bearer $TOKEN" \
        "https://secretmanager.googleapis.com/v1/projects/${var.project_id}/secrets/${var.prefect_api_key_secret}/versions/latest:access" \
        | sed -E 's/.*"data":"([^"]+)".*/\1/' | base64 -d)
      docker rm -f prefect-worker 2>/dev/null || true
      docker run -d --name prefect-worker --restart=always \
        -e PREFECT_API_URL="${var.prefect_api_url}" -e PREFECT_API_KEY="$KEY" \
        prefecthq/prefect:3.8.8-python3.11 \
        bash -c 'pip install "prefect-gcp>=0.6.22,<0.7" google-cloud-aiplatform && prefect worker start --pool higgs-vertex --type vertex-ai'
    EOT
  }

  depends_on = [google_project_service.apis]
}
