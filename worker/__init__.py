"""The worker: one process serving one GGUF model through llama.cpp, registered in Redis."""
