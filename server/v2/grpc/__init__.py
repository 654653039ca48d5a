"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, plus `grpc.health.v1`): another front end
over the same engine and the same v2 adapters as the HTTP routes, in the same process and event loop."""
