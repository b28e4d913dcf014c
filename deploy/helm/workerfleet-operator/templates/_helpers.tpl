{{/* Names are fixed, as in deploy/: cluster-scoped RBAC and the Lease are per install. */}}
{{- define "wfo.name" -}}workerfleet-operator{{- end -}}

{{- define "wfo.labels" -}}
app.kubernetes.io/name: workerfleet-operator
app.kubernetes.io/part-of: workerfleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "wfo.rules" -}}
- apiGroups: ["workerfleet.dev"]
  resources: ["workerfleets"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["workerfleet.dev"]
  resources: ["workerfleets/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch", "list"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{- define "wfo.crdRule" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end -}}

{{- define "wfo.subject" -}}
- kind: ServiceAccount
  name: {{ include "wfo.name" . }}
  namespace: {{ .Release.Namespace }}
{{- end -}}
