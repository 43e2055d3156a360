"""moto's S3 server, taking PUTs of objects one at a time.

moto checks a PUT's If-Match / If-None-Match and then stores the object in
two steps that another request thread may come between: on a loaded
machine, two create-only writes of one key could both win, where S3 lets
exactly one win. Tests race such writes (and elections rely on them), so
they run moto through this (.tools/bin/moto_server, made by
scripts/setup). Arguments are moto_server's.
"""

import sys
import threading

from moto.s3.responses import S3Response
from moto.server import main

_one_at_a_time = threading.Lock()
_put_object = S3Response.put_object


def put_object(self):
    with _one_at_a_time:
        return _put_object(self)


S3Response.put_object = put_object

if __name__ == "__main__":
    sys.exit(main())
