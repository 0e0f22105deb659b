"""The ModelDeployment CRD's CEL rules (``x-kubernetes-validations``), which ``crd.py`` puts
into the schema: the cross-field rules on ``spec`` and the rules on the whole object. Each
rule has a twin check in ``spec.py``; tests evaluate both on the same bad specs.
"""

from __future__ import annotations

from kservebench.operator import vocabulary as S

UP_DEFAULT = S.HPA_DEFAULT_STABILIZATION["scaleUpStabilizationSeconds"]
DOWN_DEFAULT = S.HPA_DEFAULT_STABILIZATION["scaleDownStabilizationSeconds"]

# (rule, message, fieldPath): the cross-field rules; spec.py enforces each one too.
CEL_RULES: list[tuple[str, str, str]] = [
    (
        "self.mode != 'slo' || (self.model.kind == 'llm' && has(self.slo)"
        " && (!has(self.kserve) || !has(self.kserve.deploymentModeNames)"
        " || self.kserve.deploymentModeNames != 'legacy'))",
        "mode slo is for kind llm, needs spec.slo (the ttftMs and itlMs objectives) and"
        " deploymentModeNames current (KServe <= 0.15 pins an external Deployment's replicas)",
        ".mode",
    ),
    *(
        (
            f"self.mode != 'slo' || !has(self.scaling.{key})",
            f"scaling.{key} is not used in mode slo (spec.slo says how it scales)",
            f".scaling.{key}",
        )
        for key in ("metric", "target", "prometheus", "hpa")
    ),
    (
        "self.mode == 'knative' || !has(self.scaling.minReplicas) || self.scaling.minReplicas >= 1",
        "minReplicas must be >= 1 in modes hpa and slo (only knative scales to zero)",
        ".scaling.minReplicas",
    ),
    (
        "self.mode == 'knative' || !has(self.scaling.scaleToZero) || !self.scaling.scaleToZero",
        "only mode knative scales to zero (hpa and slo run KServe Standard, which holds no"
        " request at zero)",
        ".scaling.scaleToZero",
    ),
    (
        "self.mode != 'hpa' || !has(self.scaling.metric)"
        " || self.scaling.metric in ['cpu', 'memory', 'prometheus']",
        "mode hpa scales on cpu, memory or prometheus",
        ".scaling.metric",
    ),
    (
        "self.mode != 'knative' || !has(self.scaling.metric)"
        " || self.scaling.metric in ['concurrency', 'rps']",
        "mode knative scales on concurrency or rps",
        ".scaling.metric",
    ),
    (
        "!has(self.scaling.minReplicas) || self.scaling.maxReplicas >= self.scaling.minReplicas",
        "maxReplicas must be >= minReplicas",
        ".scaling.maxReplicas",
    ),
    (
        "!has(self.scaling.scaleToZero) || !self.scaling.scaleToZero"
        " || !has(self.scaling.minReplicas) || self.scaling.minReplicas == 0",
        "minReplicas must be 0 when scaleToZero is true",
        ".scaling.minReplicas",
    ),
    (
        "!has(self.scaling.metric) || !(self.scaling.metric in ['cpu', 'memory'])"
        " || !has(self.scaling.target) || self.scaling.target <= 100",
        "a cpu or memory target is a utilization percent: 1-100",
        ".scaling.target",
    ),
    (
        "!has(self.scaling.metric) || self.scaling.metric != 'prometheus'"
        " || self.model.kind == 'llm'"
        " || (has(self.scaling.prometheus) && has(self.scaling.prometheus.query))",
        "metric prometheus needs scaling.prometheus.query (only llm has a default)",
        ".scaling.prometheus",
    ),
    (
        "!has(self.model.protocol) || self.model.protocol != 'openai' || self.model.kind == 'llm'",
        "protocol openai is for kind llm only",
        ".model.protocol",
    ),
    (
        "!has(self.model.llm) || self.model.kind == 'llm'",
        "model.llm is for kind llm only",
        ".model.llm",
    ),
    (
        f"self.mode != 'knative' || !has(self.timeoutSeconds)"
        f" || self.timeoutSeconds <= {S.KNATIVE_TIMEOUT_MAX}",
        f"timeoutSeconds must be <= {S.KNATIVE_TIMEOUT_MAX} in mode knative (Knative's default"
        " max-revision-timeout-seconds)",
        ".timeoutSeconds",
    ),
    (
        "self.mode != 'knative' || !has(self.scaling.knative)"
        " || !has(self.scaling.knative.initialScale) || self.scaling.knative.initialScale > 0"
        " || (has(self.scaling.knative.allowZeroInitialScale)"
        " && self.scaling.knative.allowZeroInitialScale)",
        "in mode knative, initialScale 0 needs the cluster's allow-zero-initial-scale: true"
        " (Knative refuses it otherwise); say so with allowZeroInitialScale: true",
        ".scaling.knative.initialScale",
    ),
    (
        # double(): a number field holds an int or a double; compare them alike.
        "!has(self.scaling.knative) || !has(self.scaling.knative.targetBurstCapacity)"
        " || double(self.scaling.knative.targetBurstCapacity) >= 0.0"
        " || double(self.scaling.knative.targetBurstCapacity) == -1.0",
        "targetBurstCapacity must be >= 0, or -1 (unlimited)",
        ".scaling.knative.targetBurstCapacity",
    ),
    (
        "!has(self.kserve) || !has(self.kserve.deploymentModeNames)"
        " || self.kserve.deploymentModeNames != 'legacy' || self.mode != 'hpa'"
        " || (has(self.scaling.metric) ? self.scaling.metric == 'prometheus'"
        " : self.model.kind == 'llm')"
        " || !has(self.scaling.hpa)"
        " || ((!has(self.scaling.hpa.scaleUpStabilizationSeconds)"
        f" || self.scaling.hpa.scaleUpStabilizationSeconds == {UP_DEFAULT})"
        " && (!has(self.scaling.hpa.scaleDownStabilizationSeconds)"
        f" || self.scaling.hpa.scaleDownStabilizationSeconds == {DOWN_DEFAULT}))",
        "KServe <= 0.15 (deploymentModeNames legacy) ignores HPA behaviour: its HPA runs"
        f" Kubernetes' defaults ({UP_DEFAULT} s up, {DOWN_DEFAULT} s down); use current names",
        ".scaling.hpa",
    ),
]

# Rules on the whole object: only there can CEL read metadata.name. No fieldPath: the
# schema has no metadata.name property to point at.
ROOT_CEL_RULES: list[tuple[str, str]] = [
    (
        f"self.spec.mode != '{mode}' || size(self.metadata.name) <= {limit}",
        f"metadata.name must be at most {limit} characters in mode {mode} (KServe and Knative"
        " derive longer names and labels from it)",
    )
    for mode, limit in S.NAME_MAX_BY_MODE.items()
]
