"""The ModelDeployment operator: spec -> KServe InferenceService, and the kopf handlers.

Pure parts (no cluster): ``spec.parse_model_deployment`` / ``spec.parse_scaling``,
``inferenceservice.build_inference_service``, ``reconcile.plan``, ``status``, ``crd``
and ``sdk_schema.validate_inference_service``. I/O: ``handlers`` (kopf) and ``cli``.
"""
