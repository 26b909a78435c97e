"""gRPC server reflection, served as `grpc.reflection.v1` and `grpc.reflection.v1alpha`.

Current tools (grpcurl, grpcui, Postman) ask for v1 first and older ones only know v1alpha, so
both are served by one servicer over one descriptor pool. grpcio-reflection ships v1alpha only;
v1 is the same protocol under a new package name, with the same messages and field numbers, so
the v1 service reads and writes its messages with the v1alpha classes (identical on the wire).
The v1 file is added to the pool as a renamed copy of the v1alpha one, so tools can describe it.

Two differences from grpcio-reflection's servicer:
- a method name (`stepline.v1.WorkflowService.StartAsync`) resolves to its service's file:
  protobuf's default Python pool (upb) does not index methods as symbols, the C++ and Go pools
  do, and grpcurl's `describe` of a method asks for exactly that;
- a file already sent on a stream is not sent again as a dependency of a later answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection_pb2 as pb

V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
V1 = "grpc.reflection.v1.ServerReflection"
SERVICE_NAMES = (V1, V1ALPHA)
METHOD = "ServerReflectionInfo"
V1_FILE = "grpc/reflection/v1/reflection.proto"

# Requests and responses are the v1alpha message classes (untyped: grpcio-reflection ships no
# type information).
Request = Any
Response = Any


def add_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    """Put `grpc/reflection/v1/reflection.proto` in `pool` unless it is there already."""
    try:
        pool.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    old_package = pb.DESCRIPTOR.package
    new_package = V1.rsplit(".", 1)[0]
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    proto.name = V1_FILE
    proto.package = new_package
    proto.ClearField("options")  # v1alpha's are marked deprecated and name its Go/Java homes
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.java_package = "io.grpc.reflection.v1"
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(f".{old_package}."):
                field.type_name = f".{new_package}.{field.type_name[len(old_package) + 2 :]}"
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old_package, new_package, 1)
            method.output_type = method.output_type.replace(old_package, new_package, 1)
    pool.Add(proto)


class ReflectionServicer:
    """Answers `ServerReflectionInfo` streams from `pool` for the services in `service_names`."""

    def __init__(
        self, service_names: Iterable[str], *, pool: descriptor_pool.DescriptorPool
    ) -> None:
        self._service_names = sorted(set(service_names))
        self._pool = pool

    async def ServerReflectionInfo(
        self, requests: AsyncIterator[Request], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Response]:
        sent: set[str] = set()
        async for request in requests:
            yield self._answer(request, sent)

    def _answer(self, request: Request, sent: set[str]) -> Response:
        kind = request.WhichOneof("message_request")
        try:
            if kind == "list_services":
                listed = [pb.ServiceResponse(name=name) for name in self._service_names]
                return pb.ServerReflectionResponse(
                    original_request=request,
                    list_services_response=pb.ListServiceResponse(service=listed),
                )
            if kind == "file_by_filename":
                found = self._pool.FindFileByName(request.file_by_filename)
            elif kind == "file_containing_symbol":
                found = self._file_containing(request.file_containing_symbol)
            elif kind == "file_containing_extension":
                asked = request.file_containing_extension
                message = self._pool.FindMessageTypeByName(asked.containing_type)
                extension = self._pool.FindExtensionByNumber(message, asked.extension_number)
                found = self._pool.FindFileContainingSymbol(extension.full_name)
            elif kind == "all_extension_numbers_of_type":
                message = self._pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
                numbers = sorted(e.number for e in self._pool.FindAllExtensions(message))
                return pb.ServerReflectionResponse(
                    original_request=request,
                    all_extension_numbers_response=pb.ExtensionNumberResponse(
                        base_type_name=message.full_name, extension_number=numbers
                    ),
                )
            else:
                return _error(request, grpc.StatusCode.INVALID_ARGUMENT, "no request given")
        except KeyError as err:
            return _error(request, grpc.StatusCode.NOT_FOUND, " ".join(map(str, err.args)))
        return pb.ServerReflectionResponse(
            original_request=request,
            file_descriptor_response=pb.FileDescriptorResponse(
                file_descriptor_proto=_serialized_with_dependencies(found, sent)
            ),
        )

    def _file_containing(self, symbol: str) -> FileDescriptor:
        """The file declaring `symbol`, a method name included. Raises KeyError."""
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            pass
        try:
            return self._pool.FindMethodByName(symbol).containing_service.file
        except KeyError:
            raise KeyError(f"symbol not found: {symbol}") from None


def _serialized_with_dependencies(file: FileDescriptor, sent: set[str]) -> list[bytes]:
    """`file`, always, then each file it depends on (transitively) not yet in `sent`."""
    out: list[bytes] = []
    pending = [file]
    while pending:
        current = pending.pop()
        if current is not file and current.name in sent:
            continue
        sent.add(current.name)
        proto = descriptor_pb2.FileDescriptorProto()
        current.CopyToProto(proto)
        out.append(proto.SerializeToString())
        pending.extend(d for d in current.dependencies if d.name not in sent)
    return out


def _error(request: Request, code: grpc.StatusCode, message: str) -> Response:
    return pb.ServerReflectionResponse(
        original_request=request,
        error_response=pb.ErrorResponse(error_code=code.value[0], error_message=message),
    )


def enable_reflection(
    server: grpc.aio.Server,
    service_names: Iterable[str],
    *,
    pool: descriptor_pool.DescriptorPool | None = None,
) -> None:
    """Serve reflection (v1 and v1alpha) on `server` for `service_names` and for itself."""
    pool = pool or descriptor_pool.Default()
    add_v1_file(pool)
    servicer = ReflectionServicer([*service_names, *SERVICE_NAMES], pool=pool)
    handlers = {
        METHOD: grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=pb.ServerReflectionRequest.FromString,
            response_serializer=pb.ServerReflectionResponse.SerializeToString,
        )
    }
    for name in SERVICE_NAMES:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)


__all__ = ["SERVICE_NAMES", "V1", "V1ALPHA", "ReflectionServicer", "enable_reflection"]
