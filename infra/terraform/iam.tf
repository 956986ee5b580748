resource "google_service_account" "flow" {
  project      = var.project_id
  account_id   = "higgs-flow"
  display_name = "HIGGS pipeline: Prefect flow runs (orchestration)"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "worker" {
  project      = var.project_id
  account_id   = "higgs-worker"
  display_name = "HIGGS pipeline: Dataflow workers and Vertex AI training replicas"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "prefect" {
  project      = var.project_id
  account_id   = "higgs-prefect-worker"
  display_name = "HIGGS pipeline: Prefect worker (submits flow runs to Vertex AI)"
  depends_on   = [google_project_service.apis]
}

locals {
  accounts = {
    flow    = google_service_account.flow.email
    worker  = google_service_account.worker.email
    prefect = google_service_account.prefect.email
  }
  bindings = flatten([
    for who, roles in local.project_roles : [
      for role in roles : { key = "${who}-${role}", who = who, role = role }
    ]
  ])
}

resource "google_project_iam_member" "roles" {
  for_each = { for b in local.bindings : b.key => b }
  project  = var.project_id
  role     = each.value.role
  member   = "serviceAccount:${local.accounts[each.value.who]}"
}

# actAs only where a job runs as another identity: the flow submits Dataflow / Vertex AI jobs
# that run as higgs-worker; the Prefect worker submits flow runs that run as higgs-flow.
resource "google_service_account_iam_member" "flow_acts_as_worker" {
  service_account_id = google_service_account.worker.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.flow.email}"
}

resource "google_service_account_iam_member" "prefect_acts_as_flow" {
  service_account_id = google_service_account.flow.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.prefect.email}"
}
