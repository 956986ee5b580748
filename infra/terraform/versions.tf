# Google Cloud resources of the HIGGS pipeline (docs/cloud.md, step 2).
#
#   cd infra/terraform
#   terraform init
#   terraform apply -var project_id=YOUR_PROJECT -var region=us-central1
#
# Nothing here names a real project: the project, region and bucket come from variables.
terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.40, < 7.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
