{{/* Name prefix of every resource: the release name ("ledger" gives ledger-command-api, ...). */}}
{{- define "ledger.fullname" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every resource; pass (dict "root" $ "component" "...") */}}
{{- define "ledger.labels" -}}
app.kubernetes.io/name: ledger
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: marketplace-ledger
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* Selector labels (never change on upgrade); pass (dict "root" $ "component" "...") */}}
{{- define "ledger.selector" -}}
app.kubernetes.io/name: ledger
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ledger.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The chart's own rules, checked at render time. */}}
{{- define "ledger.checks" -}}
{{- $shards := int .Values.config.shards -}}
{{- if or (lt $shards 1) (gt $shards 1024) -}}
{{- fail (printf "config.shards must be 1..1024, is %d" $shards) -}}
{{- end -}}
{{- if and .Values.commandApi.autoscaling.enabled (gt (int .Values.commandApi.autoscaling.maxReplicas) $shards) -}}
{{- fail (printf "commandApi.autoscaling.maxReplicas %d exceeds config.shards %d: the extra replicas would own no shard" (int .Values.commandApi.autoscaling.maxReplicas) $shards) -}}
{{- end -}}
{{- if gt (int .Values.publicStream.replicas) 1 -}}
{{- fail (printf "publicStream.replicas %d: the public stream is one transactional producer, a second replica would only fence the first" (int .Values.publicStream.replicas)) -}}
{{- end -}}
{{- if gt (int .Values.projector.replicas) $shards -}}
{{- fail (printf "projector.replicas %d exceeds config.shards %d: the extra replicas would own no partition" (int .Values.projector.replicas) $shards) -}}
{{- end -}}
{{- if hasKey .Values.config.extra "jwt_secret" -}}
{{- fail "config.extra.jwt_secret: the signing secret belongs in the Secret named by jwtSecret.secretName" -}}
{{- end -}}
{{- end -}}

{{/*
One ledger Deployment; pass (dict "root" $ "component" "command-api" "values" .Values.commandApi
"port" 8080 "portName" "http" "autoscaled" bool "comment" "...").
*/}}
{{- define "ledger.deployment" -}}
{{- $root := .root -}}
{{- $v := .values -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "ledger.fullname" $root }}-{{ .component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "ledger.labels" . | nindent 4 }}
spec:
  {{- if not .autoscaled }}
  replicas: {{ $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- if eq .component "command-api" }}
  # a new pod must stay ready this long before the next one is replaced, so
  # the shard moves of a rollout do not pile up
  minReadySeconds: 15
  {{- end }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      {{- if eq .component "query-api" }}
      maxSurge: 25%
      {{- else }}
      # each start moves shards (or partitions): one pod at a time
      maxSurge: 1
      {{- end }}
      maxUnavailable: 0
  selector:
    matchLabels:
      {{- include "ledger.selector" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "ledger.labels" . | nindent 8 }}
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        {{- if $root.Values.prometheusAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ .port | quote }}
        prometheus.io/path: /metrics
        {{- end }}
    spec:
      serviceAccountName: {{ include "ledger.fullname" $root }}
      automountServiceAccountToken: false
      # No Service env vars: they would land among the LEDGER_* names the
      # configuration is read from (LEDGER_KAFKA_BOOTSTRAP_PORT=tcp://...).
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- with $root.Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector:
                  matchLabels:
                    {{- include "ledger.selector" . | nindent 20 }}
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: topology.kubernetes.io/zone
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "ledger.selector" . | nindent 14 }}
      containers:
        - name: {{ .component }}
          image: {{ include "ledger.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: [{{ .component | quote }}]
          ports:
            - name: {{ .portName }}
              containerPort: {{ .port }}
              protocol: TCP
          env:
            - name: LEDGER_CONFIG
              value: /etc/ledger/ledger.toml
            - name: LEDGER_HTTP_ADDR
              value: "0.0.0.0:{{ .port }}"
            # every service checks (or needs) the same bearer-token secret
            - name: LEDGER_JWT_SECRET
              valueFrom:
                secretKeyRef:
                  name: {{ $root.Values.jwtSecret.secretName }}
                  key: {{ $root.Values.jwtSecret.key }}
            # during a rotation, the secret before it: tokens signed with either verify
            - name: LEDGER_JWT_SECRET_PREVIOUS
              valueFrom:
                secretKeyRef:
                  name: {{ $root.Values.jwtSecret.secretName }}
                  key: {{ $root.Values.jwtSecret.previousKey }}
                  optional: true
            {{- if eq .component "command-api" }}
            - name: LEDGER_ENGINE
              value: {{ $v.engine | quote }}
            {{- end }}
            - name: RUST_LOG
              value: {{ $root.Values.rustLog }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          # The server binds only once its dependencies are up (command-api:
          # once the engine worker has started); liveness waits for it.
          startupProbe:
            httpGet:
              path: /healthz
              port: {{ .portName }}
            periodSeconds: 5
            timeoutSeconds: 2
            failureThreshold: {{ $v.startupFailureThreshold }}
          # the process only: a Kafka or ScyllaDB outage must not restart pods
          livenessProbe:
            httpGet:
              path: /healthz
              port: {{ .portName }}
            periodSeconds: 10
            timeoutSeconds: 2
            failureThreshold: 3
          # Kafka and ScyllaDB answer (and, for command-api, the engine consumes)
          readinessProbe:
            httpGet:
              path: /readyz
              port: {{ .portName }}
            periodSeconds: 5
            timeoutSeconds: 2
            failureThreshold: 3
          {{- if not (has .component (list "projector" "public-stream")) }}
          lifecycle:
            # keep serving while the endpoint removal propagates (the sleep
            # action needs no shell in the image; Kubernetes >= 1.30)
            preStop:
              sleep:
                seconds: 5
          {{- end }}
          securityContext:
            runAsNonRoot: true
            runAsUser: {{ $root.Values.podSecurityContext.runAsUser }}
            runAsGroup: {{ $root.Values.podSecurityContext.runAsGroup }}
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
            seccompProfile:
              type: RuntimeDefault
          volumeMounts:
            - name: config
              mountPath: /etc/ledger
              readOnly: true
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: config
          configMap:
            name: {{ include "ledger.fullname" $root }}-config
            items:
              - key: ledger.toml
                path: ledger.toml
        # the only writable path (read-only root filesystem); state lives in
        # Kafka and ScyllaDB
        - name: tmp
          emptyDir:
            sizeLimit: {{ $v.tmpSizeLimit }}
{{- end -}}

{{/* A PodDisruptionBudget of one pod at a time; pass (dict "root" $ "component" "...") */}}
{{- define "ledger.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "ledger.fullname" .root }}-{{ .component }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "ledger.labels" . | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- include "ledger.selector" . | nindent 6 }}
{{- end -}}
