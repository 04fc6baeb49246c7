"""The local endpoint: request bodies (:mod:`.payloads`), micro-batching (:mod:`.batching`),
the FastAPI app with SageMaker's inference contract (:mod:`.app`), running it on a socket
(:mod:`.hosting`) and the Deployer stage that runs it in the background (:mod:`.deployer`)."""
