{{/* The release-scoped name of every object. */}}
{{- define "netsy.fullname" -}}
{{- printf "%s-netsy" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels shared by every object. */}}
{{- define "netsy.labels" -}}
app.kubernetes.io/name: netsy
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Labels that select the pods. */}}
{{- define "netsy.selector" -}}
app.kubernetes.io/name: netsy
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
