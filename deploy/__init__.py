"""Kubernetes packaging: the Helm chart (deploy/helm/reranker), its offline check (deploy/check.py), examples."""
