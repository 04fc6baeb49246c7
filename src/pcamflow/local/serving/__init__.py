"""The local endpoint: request bodies and answers (:mod:`.payloads`), fair micro-batching
(:mod:`.batching`), what is checked before any work (:mod:`.guards`), the FastAPI app with
SageMaker's inference contract (:mod:`.app`), connection limits (:mod:`.connections`), running
it on a socket (:mod:`.hosting`) and the Deployer stage that runs it in the background
(:mod:`.deployer`, :mod:`.process`)."""
