"""The rate-limit control plane (issue 18): tenants, keys, policies, quotas, audit."""
