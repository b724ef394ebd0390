"""snowflake.cortex code, run on spcs-llm: the notebook examples of Snowflake's Cortex Python docs with one import
changed. Start the service first (`make serve`, or `spcs-llm serve`), then:

    python examples/cortex_python.py            # SPCS_LLM_URL defaults to http://127.0.0.1:8001

Plain values go to the service over HTTP; the DataFrame part runs Snowpark's local testing mode with the deployed
function names bound to the service (`pip install snowflake-snowpark-python`; skipped without it). Inside
Snowflake, the same code with a Snowpark session runs `SPCS_LLM.LLM.<FUNCTION>` in SQL instead.
"""

# %% One import line changes: was `from snowflake.cortex import Complete, ExtractAnswer, Sentiment, ...`
import json
import os

from spcs_llm.cortex import complete, embed_text_768, extract_answer, sentiment, summarize, translate

URL = os.environ.get("SPCS_LLM_URL", "http://127.0.0.1:8001")
print(f"spcs-llm at {URL}\n")

# %% Values
print("sentiment:", sentiment("I really enjoyed this restaurant. Fantastic service!"))
print(
    "summarize:",
    summarize(
        "The Snowflake Summit keynote announced container services, so teams can run their "
        "own models next to their data without moving it out of the account."
    ),
)
print("translate:", translate("Skiing is a great winter sport.", "en", "de"))
print("extract_answer:", json.loads(extract_answer("The Eiffel Tower is in Paris.", "Where is the Eiffel Tower?")))

# %% Complete: a string, a conversation with options, and streaming token by token
print("complete:", complete("llama3.1-8b", "What are large language models? One sentence."))
conversation = [
    {"role": "system", "content": "Answer in five words or fewer."},
    {"role": "user", "content": "What is Snowflake?"},
]
print("conversation:", complete("mistral-large2", conversation, options={"max_tokens": 32, "temperature": 0.2}))
print("stream: ", end="")
for piece in complete("llama3.1-8b", "Name three planets.", stream=True, options={"max_tokens": 32}):
    print(piece, end="", flush=True)
print()

# %% Embeddings (the packaged CPU embedder answers the 768-d Cortex names)
vector = embed_text_768("snowflake-arctic-embed-m", "hello world")
print(f"embed_text_768: {len(vector)} floats, first {vector[:3]}")

# %% A DataFrame, as in Snowflake: df.withColumn(..., Summarize(col(...)))
try:
    from snowflake.snowpark import Session
    from snowflake.snowpark.functions import col
except ImportError:
    print("\n(snowflake-snowpark-python is not installed: the DataFrame example is skipped)")
else:
    from spcs_llm.cortex import local_testing

    session = Session.builder.config("local_testing", True).create()
    local_testing.bind(session)  # SPCS_LLM.LLM.SUMMARIZE etc. now call the service
    df = session.create_dataframe(
        [["Cortex functions run LLMs from SQL."], ["Containers run any model."]], schema=["abstract_text"]
    )
    df.with_column("abstract_summary", summarize(col("abstract_text"))).with_column(
        "sentiment", sentiment(col("abstract_text"))
    ).show()
    session.close()

# %% The Cortex REST API's OpenAI-compatible route, with the official openai SDK
try:
    from openai import OpenAI
except ImportError:
    print("(openai is not installed: the SDK example is skipped)")
else:
    client = OpenAI(base_url=f"{URL}/api/v2/cortex/v1", api_key=os.environ.get("SPCS_LLM_API_KEY", "unused"))
    reply = client.chat.completions.create(
        model="llama3.1-70b", max_tokens=32, messages=[{"role": "user", "content": "Say hello in French."}]
    )
    print("openai SDK:", reply.choices[0].message.content)
