"""A received `submit` → a validated `Job` (wire parameters and pixels → the methods' request)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields

from protocol import METHOD_SPECS, JobSubmitted, LoRAInfo, Method, ModelFamily, ModelInfo
from protocol import InvalidRequest as WireInvalidRequest

from ..errors import InvalidRequest
from ..methods.registry import available_methods, check_lora, check_request
from ..methods.request import GenerationRequest
from .job import Job
from .pixels import decode_image


def job_from_submit(
    event: JobSubmitted,
    session_id: str,
    model: ModelInfo,
    loras: Mapping[str, LoRAInfo] | None = None,
) -> Job:
    """Decode the input images and check the request against the method and the model.

    Runs off the event loop (PNG decoding of a big layer takes a while). The model is
    known by its description only: in a cluster it is loaded on other machines (whose
    replicas check the request again against the loaded model). `loras` are the LoRAs
    offered in `welcome`, by name.

    Raises:
        protocol.InvalidRequest: the parameters do not fit the method or the model
            (carries the job id).
        protocol.BadImage: an input image does not decode.
    """
    submit = event.submit
    parameters = submit.request
    inputs = {role: decode_image(ref, data) for role, (ref, data) in event.images.items()}
    # The wire parameters are the request's fields but the pixels (`inputs`).
    wire = {field.name: getattr(parameters, field.name) for field in fields(parameters)}
    wire["layer_prompts"] = dict(parameters.layer_prompts)
    request = GenerationRequest(**wire, inputs=inputs)
    try:
        check_request(request)
        family = METHOD_SPECS[request.method].family
        if family != model.family:
            raise InvalidRequest(
                "method",
                f"{request.method.value} needs a {family.value} base model, "
                f"but {model.name} is {model.family.value}",
            )
        check_lora(request.lora, loras or {}, model.family, model.name)
    except InvalidRequest as error:
        raise WireInvalidRequest(str(error), job=submit.job) from error
    return Job(
        id=submit.job,
        session_id=session_id,
        request=request,
        result_format=submit.result_format,
        previews=submit.previews,
    )


def runnable_methods(family: ModelFamily) -> tuple[Method, ...]:
    """The methods this backend runs with a model of `family` (for `welcome`)."""
    return tuple(m for m in available_methods() if METHOD_SPECS[m].family == family)
