"""The router: stateless aiohttp replicas that dispatch OpenAI requests to llama.cpp workers."""
