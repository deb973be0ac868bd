//! Docker end-to-end tests: one integration binary, real dockerd, real base images
//! (`scripts/docker-base-images`). Every test name starts with `docker_` so CI can select or
//! exclude them; `GILGAL_SKIP_DOCKER=1` turns each into a printed skip.

mod build;
mod common;
mod runtime;
