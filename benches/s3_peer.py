"""The straightforward Python way to do what `ingestd sync s3://bucket` does, as the peer of
`cargo bench --bench s3`: boto3 lists the bucket and GETs each object in turn, LangChain's
RecursiveCharacterTextSplitter (sized by tiktoken, cl100k_base) cuts the text with the same
chunk size and overlap as ingestd's defaults, each chunk's tokens are counted, and one JSON line
per chunk goes to stdout.

    python3 s3_peer.py ENDPOINT BUCKET     (credentials from AWS_ACCESS_KEY_ID / _SECRET_)
    python3 s3_peer.py --cache-key         (the file name tiktoken caches cl100k_base under)
"""

import hashlib
import json
import sys

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def main() -> None:
    if sys.argv[1:] == ["--cache-key"]:
        print(hashlib.sha1(CL100K_URL.encode()).hexdigest())
        return
    endpoint, bucket = sys.argv[1], sys.argv[2]

    import boto3
    import tiktoken
    from botocore.config import Config
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    encoding = tiktoken.get_encoding("cl100k_base")
    splitter = RecursiveCharacterTextSplitter.from_tiktoken_encoder(
        encoding_name="cl100k_base", chunk_size=1500, chunk_overlap=20
    )
    out = sys.stdout
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for entry in page.get("Contents", []):
            key = entry["Key"]
            text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
            for index, chunk in enumerate(splitter.split_text(text)):
                record = {
                    "key": key,
                    "chunk_index": index,
                    "text": chunk,
                    "token_count": len(encoding.encode_ordinary(chunk)),
                }
                out.write(json.dumps(record))
                out.write("\n")


if __name__ == "__main__":
    main()
