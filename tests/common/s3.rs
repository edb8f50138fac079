//! A real S3-compatible server (s3s-fs, SigV4 authentication) on loopback, started in-process
//! by the tests that need one.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

pub const ACCESS_KEY: &str = "AKIDINGESTDTEST";
pub const SECRET_KEY: &str = "ingestd-test-secret-never-printed";

/// Requests a server has answered, by kind.
#[derive(Default)]
pub struct Counts {
    pub gets: AtomicU64,
    pub heads: AtomicU64,
    pub lists: AtomicU64,
}

impl Counts {
    /// GETs and HEADs of objects so far.
    pub fn reads(&self) -> u64 {
        self.gets.load(Ordering::Relaxed) + self.heads.load(Ordering::Relaxed)
    }
}

/// A running server; buckets are folders of `root`.
pub struct Server {
    pub addr: SocketAddr,
    pub root: tempfile::TempDir,
    pub counts: Arc<Counts>,
}

impl Server {
    pub fn start() -> Server {
        let root = tempfile::tempdir().unwrap();
        let (addr, counts) = serve_counted(root.path(), 1);
        Server { addr, root, counts }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates `bucket` holding a copy of the local folder `from`.
    pub fn bucket_from(&self, bucket: &str, from: &Path) {
        copy_dir(from, &self.root.path().join(bucket));
    }
}

/// Serves the folders of `root` as buckets on a loopback port, from a thread of its own with
/// `worker_threads` runtime threads; returns the address.
pub fn serve(root: &Path, worker_threads: usize) -> SocketAddr {
    serve_counted(root, worker_threads).0
}

/// Like [`serve`], counting the requests answered.
pub fn serve_counted(root: &Path, worker_threads: usize) -> (SocketAddr, Arc<Counts>) {
    let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs over the folder");
    let counts = Arc::new(Counts::default());
    let counted = Arc::clone(&counts);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads.max(1))
            .enable_all()
            .build()
            .expect("the server's runtime");
        runtime.block_on(async move {
            let mut builder = S3ServiceBuilder::new(Conditional(fs, counted));
            builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            let service = builder.build();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a loopback port");
            tx.send(listener.local_addr().expect("its address"))
                .expect("reporting the address");
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                // Small responses must not wait for delayed ACKs (40 ms each).
                let _ = socket.set_nodelay(true);
                let connection = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(connection);
            }
        });
    });
    (rx.recv().expect("the server's address"), counts)
}

/// s3s-fs, plus `If-Match` on GET as S3 answers it (`412 PreconditionFailed` once the object
/// has been replaced), which s3s-fs leaves out.
struct Conditional(s3s_fs::FileSystem, Arc<Counts>);

#[async_trait::async_trait]
impl s3s::S3 for Conditional {
    async fn get_object(
        &self,
        req: s3s::S3Request<s3s::dto::GetObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::GetObjectOutput>> {
        self.1.gets.fetch_add(1, Ordering::Relaxed);
        if let Some(s3s::dto::ETagCondition::ETag(expected)) = req.input.if_match.clone() {
            let head = req.clone().map_input(|input| {
                s3s::dto::HeadObjectInput::builder()
                    .bucket(input.bucket)
                    .key(input.key)
                    .build()
                    .unwrap()
            });
            let current = self.0.head_object(head).await?.output.e_tag;
            if !current.is_some_and(|etag| etag.strong_cmp(&expected)) {
                return Err(s3s::s3_error!(PreconditionFailed, "ETag does not match"));
            }
        }
        self.0.get_object(req).await
    }

    async fn head_object(
        &self,
        req: s3s::S3Request<s3s::dto::HeadObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::HeadObjectOutput>> {
        self.1.heads.fetch_add(1, Ordering::Relaxed);
        self.0.head_object(req).await
    }

    async fn list_objects_v2(
        &self,
        req: s3s::S3Request<s3s::dto::ListObjectsV2Input>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::ListObjectsV2Output>> {
        self.1.lists.fetch_add(1, Ordering::Relaxed);
        let bucket = req.input.bucket.clone();
        let head = req.clone();
        let mut listed = self.0.list_objects_v2(req).await?;
        // S3 lists every object with its ETag; s3s-fs leaves it out: add it as S3 would.
        for object in listed.output.contents.iter_mut().flatten() {
            let Some(key) = object.key.clone() else {
                continue;
            };
            let input = s3s::dto::HeadObjectInput::builder()
                .bucket(bucket.clone())
                .key(key)
                .build()
                .unwrap();
            object.e_tag = self
                .0
                .head_object(head.clone().map_input(|_| input))
                .await?
                .output
                .e_tag;
        }
        Ok(listed)
    }

    async fn list_buckets(
        &self,
        req: s3s::S3Request<s3s::dto::ListBucketsInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::ListBucketsOutput>> {
        self.0.list_buckets(req).await
    }

    async fn create_bucket(
        &self,
        req: s3s::S3Request<s3s::dto::CreateBucketInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::CreateBucketOutput>> {
        self.0.create_bucket(req).await
    }

    async fn put_object(
        &self,
        req: s3s::S3Request<s3s::dto::PutObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::PutObjectOutput>> {
        self.0.put_object(req).await
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
