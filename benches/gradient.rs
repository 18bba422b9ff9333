//! Forward pass vs gradient graph of the reference ResNet-18 (CIFAR style) at 32x32 on CPU.
//! `make bench`; `gradwatch bench` prints the same comparison as a table.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gradwatch::grad::{self, CompileOptions};
use gradwatch::onnx;
use gradwatch::runtime::{self, ModelSession, RuntimeOptions};
use ndarray::{ArrayD, IxDyn};

fn bench(c: &mut Criterion) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(gradwatch::model::DEFAULT_MODEL);
    let model = onnx::load(&path).expect("reference model");
    runtime::init(None).expect("ONNX Runtime: run `make ort`");
    let compiled = grad::compile(&model, &CompileOptions::default()).expect("compile");
    let opts = RuntimeOptions::default();
    let mut fwd = ModelSession::new(&onnx::encode(&model), &opts).expect("forward session");
    let mut grd = ModelSession::new(&onnx::encode(&compiled.model), &opts).expect("gradient session");
    c.bench_function("compile resnet18", |b| b.iter(|| grad::compile(&model, &CompileOptions::default()).unwrap()));
    let mut g = c.benchmark_group("resnet18-32x32");
    g.sample_size(10);
    for batch in [1usize, 16] {
        let x = ArrayD::from_elem(IxDyn(&[batch, 3, 32, 32]), 0.1f32);
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("forward", batch), &x, |b, x| {
            b.iter(|| fwd.run(&[("image", x.view())]).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("gradient", batch), &x, |b, x| {
            b.iter(|| grd.run(&[("image", x.view())]).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
