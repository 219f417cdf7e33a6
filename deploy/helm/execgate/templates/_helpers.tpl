{{/*
Names. With the release named "execgate" every resource is execgate-<component>.
*/}}
{{- define "execgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "execgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "execgate.controller.fullname" -}}
{{- printf "%s-controller" (include "execgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "execgate.agent.fullname" -}}
{{- printf "%s-agent" (include "execgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "execgate.webhook.serviceName" -}}
{{- printf "%s-webhook" (include "execgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Secrets holding certificates (same names and keys with or without cert-manager). */}}
{{- define "execgate.webhook.secretName" -}}
{{- printf "%s-webhook-tls" (include "execgate.fullname" .) -}}
{{- end -}}
{{/*
Agent mTLS CA (tls.crt, tls.key, ca.crt): mounted by the controller only, which signs each
agent's serving certificate (CSR signer execgate.io/agent-serving, SAN = the agent's node name,
server usage only) and its own client-only certificate with it. Never mounted on agent nodes:
the kubelet of any node may read the Secrets its pods mount.
*/}}
{{- define "execgate.agentCA.secretName" -}}
{{- printf "%s-agent-ca" (include "execgate.fullname" .) -}}
{{- end -}}
{{/* ConfigMap (ca.crt) the controller publishes: the CAs agents trust the controller by. */}}
{{- define "execgate.agentCABundle.configMapName" -}}
{{- printf "%s-agent-ca-bundle" (include "execgate.fullname" .) -}}
{{- end -}}

{{/* Identity the agent requires in the controller's client certificate (--client-name). */}}
{{- define "execgate.controller.clientName" -}}
execgate-controller
{{- end -}}

{{/* The image by digest when one is given (what `make images` prints), else by tag. */}}
{{- define "execgate.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Labels. */}}
{{- define "execgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "execgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: execgate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "execgate.controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "execgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "execgate.agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "execgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "execgate.controller.labels" -}}
{{ include "execgate.labels" . }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "execgate.agent.labels" -}}
{{ include "execgate.labels" . }}
app.kubernetes.io/component: agent
{{- end -}}

{{/* Label selector string the controller uses to find agent pods (--agent-selector). */}}
{{- define "execgate.agent.selector" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=agent" (include "execgate.name" .) .Release.Name -}}
{{- end -}}

{{/*
Refuse settings that would weaken the enforcer. Rendered from validate.yaml, so any
install/upgrade/template/lint fails with the message.
*/}}
{{- define "execgate.validate" -}}
{{- if .Values.agent.insecureForTesting -}}
{{- fail "agent.insecureForTesting=true is refused: the agent never serves without mTLS in a cluster" -}}
{{- end -}}
{{- /* The same flag smuggled in through the command line, whatever its value or spelling
       (Go accepts -flag, --flag, --flag=x; a shell wrapper may quote it). */ -}}
{{- range $i, $arg := concat (.Values.agent.command | default list) (.Values.agent.extraArgs | default list) -}}
{{- if regexMatch "(^|[^A-Za-z0-9_-])--?insecure-for-testing([^A-Za-z0-9_-]|$)" (toString $arg) -}}
{{- fail (printf "agent.command/agent.extraArgs contain %q, which is refused: the agent never serves without mTLS in a cluster (--insecure-for-testing exists only for local tests of the binary); remove it" (toString $arg)) -}}
{{- end -}}
{{- end -}}
{{- /* The webhook's time budget (issue 14.7): the API server waits webhook.timeoutSeconds,
       then binds the pod without the push (fail open). Inside that: the API server's own
       share of the call (webhook.callOverhead: its connection and TLS handshake to the
       webhook, the review both ways), the pod lookup when the cache misses
       (controller.lookupTimeout), and the push, which includes the dial and mTLS handshake
       of a first push to a node (controller.pushTimeout). The controller is told to answer
       within timeoutSeconds - callOverhead (--answer-within) whatever its stages take. */ -}}
{{- $timeoutMs := mul (int .Values.webhook.timeoutSeconds) 1000 -}}
{{- $pushMs := include "execgate.durationMs" (list "controller.pushTimeout" .Values.controller.pushTimeout) | atoi -}}
{{- $lookupMs := include "execgate.durationMs" (list "controller.lookupTimeout" .Values.controller.lookupTimeout) | atoi -}}
{{- $overheadMs := include "execgate.durationMs" (list "webhook.callOverhead" .Values.webhook.callOverhead) | atoi -}}
{{- if lt $overheadMs 100 -}}
{{- fail (printf "webhook.callOverhead (%s) must be at least 100ms: it is the API server's share of webhook.timeoutSeconds (its TLS handshake to the webhook, the review both ways), which the controller leaves unused" (toString .Values.webhook.callOverhead)) -}}
{{- end -}}
{{- if or (lt $pushMs 1) (lt $lookupMs 1) -}}
{{- fail "controller.pushTimeout and controller.lookupTimeout must be positive" -}}
{{- end -}}
{{- $sum := add $lookupMs $pushMs $overheadMs -}}
{{- if gt (int $sum) (int $timeoutMs) -}}
{{- fail (printf "controller.lookupTimeout (%s) + controller.pushTimeout (%s, which includes the dial and mTLS handshake of a first push to a node) + webhook.callOverhead (%s) = %dms exceeds webhook.timeoutSeconds (%ds): a binding whose pod lookup is slow would then run out of time for its push, and the API server would give up on the webhook and bind the pod without its policy (fail open); lower the timeouts or raise webhook.timeoutSeconds" (toString .Values.controller.lookupTimeout) (toString .Values.controller.pushTimeout) (toString .Values.webhook.callOverhead) (int $sum) (int .Values.webhook.timeoutSeconds)) -}}
{{- end -}}
{{- end -}}

{{/* Milliseconds in a duration value given as whole ms or s; (list "value.name" value). */}}
{{- define "execgate.durationMs" -}}
{{- $name := index . 0 -}}
{{- $v := toString (index . 1) -}}
{{- if regexMatch "^[0-9]+ms$" $v -}}
{{- trimSuffix "ms" $v | int -}}
{{- else if regexMatch "^[0-9]+s$" $v -}}
{{- mul (trimSuffix "s" $v | int) 1000 -}}
{{- else -}}
{{- fail (printf "%s (%q) must be a whole number of milliseconds or seconds (250ms, 1s): the chart adds it into the webhook's time budget" $name $v) -}}
{{- end -}}
{{- end -}}

{{/* --answer-within of the controller: webhook.timeoutSeconds minus webhook.callOverhead, in ms. */}}
{{- define "execgate.answerWithinMs" -}}
{{- sub (mul (int .Values.webhook.timeoutSeconds) 1000) (include "execgate.durationMs" (list "webhook.callOverhead" .Values.webhook.callOverhead) | atoi) -}}
{{- end -}}

{{/*
Certificates generated by the chart (certManager.enabled=false).

Generated once per render and cached on the root context, so the Secrets and the webhook
caBundle agree. Existing Secrets are reused on upgrade (lookup). The webhook CA's key is never
stored. The agent CA's key is (Secret execgate.agentCA.secretName, read by the controller only):
the controller signs agent leaves at run time, since per-node certificates cannot be made at
render time. Rotating the agent CA: delete that Secret and upgrade; the controller keeps the
previous CA in the agents' bundle until it expires (see docs/threat-model.md, item 6).
All values are base64 encoded, ready for Secret .data and caBundle.

Usage: {{ include "execgate.certs" $ }} then $.execgateCerts.webhook.crt etc.
*/}}
{{- define "execgate.certs" -}}
{{- if not (hasKey . "execgateCerts") -}}
{{- $ns := .Release.Namespace -}}
{{- $days := int .Values.certs.validityDays -}}
{{- $certs := dict -}}

{{- /* Webhook serving certificate. */ -}}
{{- $data := dict -}}
{{- with (lookup "v1" "Secret" $ns (include "execgate.webhook.secretName" .)) -}}
{{- $data = default (dict) .data -}}
{{- end -}}
{{- if and (hasKey $data "tls.crt") (hasKey $data "tls.key") (hasKey $data "ca.crt") -}}
{{- $_ := set $certs "webhook" (dict "crt" (index $data "tls.crt") "key" (index $data "tls.key") "ca" (index $data "ca.crt")) -}}
{{- else -}}
{{- $svc := include "execgate.webhook.serviceName" . -}}
{{- $ca := genCA (printf "%s-webhook-ca" (include "execgate.fullname" .)) $days -}}
{{- $dns := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- $cert := genSignedCert (printf "%s.%s.svc" $svc $ns) nil $dns $days $ca -}}
{{- $_ := set $certs "webhook" (dict "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) "ca" ($ca.Cert | b64enc)) -}}
{{- end -}}

{{- /* Agent mTLS: the CA only; its leaves are signed by the controller (one per node). */ -}}
{{- $agentCA := dict -}}
{{- with (lookup "v1" "Secret" $ns (include "execgate.agentCA.secretName" .)) -}}
{{- $agentCA = default (dict) .data -}}
{{- end -}}
{{- if and (hasKey $agentCA "tls.crt") (hasKey $agentCA "tls.key") -}}
{{- $_ := set $certs "agentCA" (dict "crt" (index $agentCA "tls.crt") "key" (index $agentCA "tls.key")) -}}
{{- else -}}
{{- $ca := genCA (printf "%s-agent-ca" (include "execgate.fullname" .)) $days -}}
{{- $_ := set $certs "agentCA" (dict "crt" ($ca.Cert | b64enc) "key" ($ca.Key | b64enc)) -}}
{{- end -}}

{{- $_ := set . "execgateCerts" $certs -}}
{{- end -}}
{{- end -}}

