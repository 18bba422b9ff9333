//! The seed of the backward pass: the gradient of the loss with respect to the logits.

use super::{Ctx, GradError, Loss};
use crate::onnx::attr;

/// `dJ/dz` for the chosen loss, `[N, C]`.
pub(super) fn loss_seed(ctx: &mut Ctx, z: &str, label: &[f32], loss: Loss) -> Result<String, GradError> {
    let c = label.len();
    let b = &mut ctx.b;
    Ok(match loss {
        Loss::BceLogits => {
            let s = b.op("Sigmoid", &[z], vec![]);
            let y = b.const_f32("label", &[c], label);
            let d = b.sub(&s, &y);
            b.scale(&d, 1.0 / c as f32)
        }
        Loss::BceSoftmax => {
            let p = b.op("Softmax", &[z], vec![attr::int("axis", 1)]);
            let one = b.scalar(1.0);
            let om = b.sub(&one, &p);
            let eps = b.scalar(1e-12);
            let den = b.op("Max", &[&om, &eps], vec![]);
            let ratio = b.op("Div", &[&p, &den], vec![]);
            let not_y: Vec<f32> = label.iter().map(|v| 1.0 - v).collect();
            let ny = b.const_f32("not_label", &[c], &not_y);
            let y = b.const_f32("label", &[c], label);
            let t = b.mul(&ratio, &ny);
            let u = b.sub(&y, &t);
            // p_i * dJ/dp_i
            let pg = b.scale(&u, -1.0 / c as f32);
            let s = b.reduce("ReduceSum", &pg, &[1], true);
            let ps = b.mul(&p, &s);
            b.sub(&pg, &ps)
        }
        Loss::Odin => {
            let t = super::outputs::TEMPERATURE;
            let zt = b.op("Div", &[z, t], vec![]);
            let p = b.op("Softmax", &[&zt], vec![attr::int("axis", 1)]);
            let am = b.op("ArgMax", &[z], vec![attr::int("axis", 1), attr::int("keepdims", 1)]);
            let range = b.const_i64("classes", &(0..c as i64).collect::<Vec<_>>());
            let oh = b.equal_mask(&am, &range);
            let d = b.sub(&p, &oh);
            b.op("Div", &[&d, t], vec![])
        }
    })
}
